"""Datasets for training shift networks, without torchvision.

Every dataset is held in memory as one ``uint8`` tensor of shape ``(N, C, H, W)``
plus an ``int64`` label tensor; batches are made by indexing those tensors and are
augmented as whole batches with torch ops (no per-image PIL work in the training
loop). Decoded images are cached as ``.npy`` files in the cache directory, so a
JPEG folder is decoded once, not once per epoch.

Sources, per dataset (see ``docs/TRAINING.md``):

* CIFAR-10 / CIFAR-100:
  an ImageFolder directory (``train/<class>/*.jpg``, ``test/<class>/*.jpg``; the
  sorted class folder names give the labels), the original python pickle batches
  (``cifar-10-batches-py`` / ``cifar-100-python``), a ``.tar.gz`` of either (it is
  unpacked into the cache), or a download of the official python tarball.
* Fashion-MNIST: the four IDX files (``.gz`` or not) in a directory, or a download.

Without an explicit ``data_dir`` the loaders look in the cache, in the shared
dataset folder of the project (``../shared/datasets``) and in
``/usr/share/datasets`` (Debian's ``dataset-fashion-mnist``), then download.
Errors are raised as :class:`DataError` with a one-line message.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import struct
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DataError",
    "DatasetInfo",
    "Splits",
    "DATASETS",
    "cache_dir",
    "load_dataset",
    "load_imagefolder",
    "load_cifar_pickle",
    "load_idx",
    "read_idx",
    "split_train_val",
    "Normalize",
    "random_crop_flip",
    "BatchLoader",
]


class DataError(RuntimeError):
    """A data problem with a message meant for the user (one line)."""


# --------------------------------------------------------------------------- info

@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    size: int                   # images are size x size
    mean: tuple[float, ...]     # per channel, on [0, 1] pixel values
    std: tuple[float, ...]
    pad: int                    # random-crop padding of the training recipe
    flip: bool                  # random horizontal flip in the training recipe
    classes: tuple[str, ...] = ()


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

#: Per-channel mean/std are the usual statistics of the training sets on [0, 1]
#: pixels (the true per-pixel standard deviation, not the 0.2023/0.1994/0.2010
#: figures that some CIFAR repositories copy).
DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465),
                           (0.2470, 0.2435, 0.2616), 4, True, CIFAR10_CLASSES),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409),
                            (0.2673, 0.2564, 0.2762), 4, True),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,),
                                 2, False, FASHION_CLASSES),
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}

_CIFAR_URLS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
}
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_FILES = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
#: Debian's dataset packages (dataset-fashion-mnist) install here.
SYSTEM_DATASETS = Path("/usr/share/datasets")
_IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    return key


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``override``, else $SHIFTFPGA_CACHE, else ~/.cache/shiftfpga."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("SHIFTFPGA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "shiftfpga"


def shared_dataset_dirs() -> list[Path]:
    """Folders that may hold the project's shared copies of the datasets."""
    out: list[Path] = []
    env = os.environ.get("SHIFTFPGA_DATASETS")
    if env:
        out += [Path(p) for p in env.split(os.pathsep) if p]
    repo = Path(__file__).resolve().parents[1]
    out += [repo.parent / "shared" / "datasets", Path.cwd().parent / "shared" / "datasets"]
    seen, uniq = set(), []
    for p in out:
        r = p.resolve() if p.exists() else p
        if r not in seen:
            seen.add(r)
            uniq.append(p)
    return uniq


# --------------------------------------------------------------------------- splits

@dataclass
class Splits:
    """A dataset in memory: uint8 ``(N, C, H, W)`` images and int64 labels."""
    info: DatasetInfo
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    source: str                       # where the data came from (for result files)
    extra: dict = field(default_factory=dict)


def _check_arrays(info: DatasetInfo, x: np.ndarray, y: np.ndarray, where: str) -> None:
    exp = (info.in_channels, info.size, info.size)
    if x.ndim != 4 or tuple(x.shape[1:]) != exp or x.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 images of shape (N, {exp[0]}, {exp[1]}, {exp[2]}), "
                        f"got {x.dtype} {tuple(x.shape)}")
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= info.num_classes):
        raise DataError(f"{where}: labels outside 0..{info.num_classes - 1}")


def _as_splits(info, tr_x, tr_y, te_x, te_y, classes, source) -> Splits:
    _check_arrays(info, tr_x, tr_y, source + " (train)")
    _check_arrays(info, te_x, te_y, source + " (test)")
    return Splits(info, torch.from_numpy(np.ascontiguousarray(tr_x)),
                  torch.from_numpy(np.asarray(tr_y, dtype=np.int64)),
                  torch.from_numpy(np.ascontiguousarray(te_x)),
                  torch.from_numpy(np.asarray(te_y, dtype=np.int64)),
                  tuple(classes), source)


# --------------------------------------------------------------------------- file helpers

def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, md5: str | None, log: Callable[[str], None]) -> Path:
    """Download ``url`` to ``dest`` (atomically); raise DataError when it fails."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"downloading {url} -> {dest}")
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise DataError(f"download of {url} failed ({reason})") from None
    if md5 and _md5(tmp) != md5:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download of {url} has the wrong md5 checksum")
    os.replace(tmp, dest)
    return dest


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    root = dest.resolve()
    for m in tar.getmembers():
        target = (dest / m.name).resolve()
        if not (target == root or root in target.parents) or m.issym() or m.islnk() or m.isdev():
            raise DataError(f"refusing to unpack suspicious archive member {m.name!r}")
    try:
        tar.extractall(dest, filter="data")
    except TypeError:  # Python without extraction filters
        tar.extractall(dest)


def _unpack(archive: Path, dest: Path, log: Callable[[str], None]) -> Path:
    """Unpack ``archive`` into the directory ``dest`` once (atomically, with a stamp)."""
    st = archive.stat()
    stamp = f"{archive.resolve()}\n{st.st_size}\n{int(st.st_mtime)}\n"
    marker = dest / ".unpacked"
    if marker.is_file() and marker.read_text() == stamp:
        return dest
    log(f"unpacking {archive} -> {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + ".tmp"))
    try:
        try:
            with tarfile.open(archive) as tar:
                _safe_extract(tar, tmp)
        except (tarfile.TarError, EOFError, OSError, zlib_error()) as e:
            raise DataError(f"cannot unpack {archive}: {e}") from None
        (tmp / ".unpacked").write_text(stamp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def zlib_error():
    import zlib
    return zlib.error


# --------------------------------------------------------------------------- ImageFolder

def _is_imagefolder(d: Path) -> bool:
    return (d / "train").is_dir() and (d / "test").is_dir() and any(
        p.is_dir() for p in (d / "train").iterdir())


def _list_split(d: Path) -> tuple[list[str], list[tuple[str, int]]]:
    classes = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = []
    for i, c in enumerate(classes):
        for p in sorted((d / c).iterdir()):
            if p.is_file() and p.suffix.lower() in _IMG_EXT:
                files.append((f"{c}/{p.name}", i))
    return classes, files


def _decode(root: Path, files: Sequence[tuple[str, int]], mode: str, size: int,
            desc: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    ch = 3 if mode == "RGB" else 1
    x = np.empty((len(files), size, size, ch), dtype=np.uint8)
    y = np.empty(len(files), dtype=np.int64)
    it = files
    if progress:
        from tqdm import tqdm
        it = tqdm(files, desc=desc, unit="img", mininterval=1.0)
    for k, (rel, label) in enumerate(it):
        p = root / rel
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                if im.size != (size, size):
                    raise DataError(f"{p}: image is {im.size[0]}x{im.size[1]}, expected {size}x{size}")
                x[k] = np.asarray(im, dtype=np.uint8).reshape(size, size, ch)
        except DataError:
            raise
        except Exception as e:  # PIL raises many kinds
            raise DataError(f"cannot decode {p}: {e}") from None
        y[k] = label
    return x.transpose(0, 3, 1, 2).copy(), y


def load_imagefolder(root: str | os.PathLike, info: DatasetInfo, cache: Path | None = None,
                     progress: bool = False, log: Callable[[str], None] = lambda s: None
                     ) -> Splits:
    """Load ``root/train/<class>/*`` and ``root/test/<class>/*`` (sorted class names are the
    labels), decoding once into ``.npy`` files under ``cache/decoded``."""
    root = Path(root)
    if not _is_imagefolder(root):
        raise DataError(f"{root} is not an ImageFolder directory (needs train/<class>/ and test/<class>/)")
    tr_classes, tr_files = _list_split(root / "train")
    te_classes, te_files = _list_split(root / "test")
    if tr_classes != te_classes:
        raise DataError(f"{root}: train and test have different class folders")
    if len(tr_classes) != info.num_classes:
        raise DataError(f"{root}: {len(tr_classes)} class folders, {info.name} has {info.num_classes}")
    if not tr_files or not te_files:
        raise DataError(f"{root}: no images found in train/ or test/")
    mode = "RGB" if info.in_channels == 3 else "L"
    h = hashlib.sha1(f"{root.resolve()}|{mode}|{info.size}".encode())
    for split, files in (("train", tr_files), ("test", te_files)):
        for rel, label in files:
            st = (root / split / rel).stat()
            h.update(f"{split}/{rel}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    key = h.hexdigest()[:16]
    cdir = (cache or cache_dir()) / "decoded" / f"{info.name}-{key}"
    names = ("train_x", "train_y", "test_x", "test_y")
    if all((cdir / f"{n}.npy").is_file() for n in names):
        try:
            arrs = [np.load(cdir / f"{n}.npy") for n in names]
            return _as_splits(info, *arrs, tr_classes, str(root))
        except (OSError, ValueError) as e:
            log(f"ignoring unreadable decode cache {cdir} ({e})")
    log(f"decoding {len(tr_files) + len(te_files)} images from {root} (once; cached in {cdir})")
    tr_x, tr_y = _decode(root / "train", tr_files, mode, info.size, "decode train", progress)
    te_x, te_y = _decode(root / "test", te_files, mode, info.size, "decode test", progress)
    try:
        for n, a in zip(names, (tr_x, tr_y, te_x, te_y)):
            _atomic_save_npy(cdir / f"{n}.npy", a)
        (cdir / "classes.json").write_text(json.dumps({"root": str(root.resolve()),
                                                       "classes": tr_classes}))
    except OSError as e:
        log(f"warning: cannot write decode cache {cdir} ({e})")
    return _as_splits(info, tr_x, tr_y, te_x, te_y, tr_classes, str(root))


# --------------------------------------------------------------------------- CIFAR pickles

def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:
        raise DataError(f"cannot read CIFAR batch {path}: {e}") from None


def _key(d: dict, name: str):
    if name.encode() in d:
        return d[name.encode()]
    if name in d:
        return d[name]
    raise DataError(f"CIFAR batch lacks the key {name!r}")


def load_cifar_pickle(d: str | os.PathLike, info: DatasetInfo) -> Splits:
    """Load the official python batches from ``cifar-10-batches-py`` or ``cifar-100-python``."""
    d = Path(d)

    def arr(batch):
        x = np.asarray(_key(batch, "data"), dtype=np.uint8)
        return x.reshape(-1, 3, 32, 32)

    if info.name == "cifar10":
        parts = [_unpickle(d / f"data_batch_{i}") for i in range(1, 6)]
        test = _unpickle(d / "test_batch")
        meta = _unpickle(d / "batches.meta") if (d / "batches.meta").exists() else None
        tr_x = np.concatenate([arr(b) for b in parts])
        tr_y = np.concatenate([np.asarray(_key(b, "labels")) for b in parts])
        te_x, te_y = arr(test), np.asarray(_key(test, "labels"))
        names = _key(meta, "label_names") if meta else CIFAR10_CLASSES
    elif info.name == "cifar100":
        tr, te = _unpickle(d / "train"), _unpickle(d / "test")
        meta = _unpickle(d / "meta") if (d / "meta").exists() else None
        tr_x, tr_y = arr(tr), np.asarray(_key(tr, "fine_labels"))
        te_x, te_y = arr(te), np.asarray(_key(te, "fine_labels"))
        names = _key(meta, "fine_label_names") if meta else [str(i) for i in range(100)]
    else:
        raise DataError(f"{info.name} has no CIFAR pickle format")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return _as_splits(info, tr_x, tr_y.astype(np.int64), te_x, te_y.astype(np.int64),
                      classes, str(d))


def _is_cifar_pickle_dir(d: Path, name: str) -> bool:
    if name == "cifar10":
        return (d / "data_batch_1").is_file() and (d / "test_batch").is_file()
    return (d / "train").is_file() and (d / "test").is_file()


# --------------------------------------------------------------------------- IDX (Fashion-MNIST)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed)."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dt = np.dtype(_IDX_DTYPES[raw[2]])
    n = int(np.prod(dims)) if dims else 0
    body = raw[4 + 4 * ndim:]
    if len(body) != n * dt.itemsize:
        raise DataError(f"{path}: size does not match its IDX header {dims}")
    return np.frombuffer(body, dtype=dt).reshape(dims).copy()


def _idx_file(d: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (d / name).is_file():
            return d / name
    return None


def _has_idx(d: Path) -> bool:
    return all(_idx_file(d, s) is not None for s in _FASHION_FILES)


def load_idx(d: str | os.PathLike, info: DatasetInfo = DATASETS["fashion-mnist"]) -> Splits:
    """Load Fashion-MNIST (or MNIST) from the four IDX files in ``d``."""
    d = Path(d)
    files = {s: _idx_file(d, s) for s in _FASHION_FILES}
    missing = [s for s, p in files.items() if p is None]
    if missing:
        raise DataError(f"{d}: missing IDX file(s) {', '.join(missing)}")
    tr_x = read_idx(files["train-images-idx3-ubyte"])
    tr_y = read_idx(files["train-labels-idx1-ubyte"]).astype(np.int64)
    te_x = read_idx(files["t10k-images-idx3-ubyte"])
    te_y = read_idx(files["t10k-labels-idx1-ubyte"]).astype(np.int64)
    for a, n in ((tr_x, "train"), (te_x, "t10k")):
        if a.ndim != 3 or a.dtype != np.uint8:
            raise DataError(f"{d}: {n} images must be uint8 (N, H, W)")
    return _as_splits(info, tr_x[:, None], tr_y, te_x[:, None], te_y, info.classes, str(d))


# --------------------------------------------------------------------------- resolution

def _from_dir(name: str, info: DatasetInfo, d: Path, cache: Path, progress: bool,
              log) -> Splits | None:
    """Try to load ``name`` from the directory or archive ``d``; None when nothing fits."""
    if d.is_file():
        if d.name.endswith((".tar.gz", ".tgz", ".tar")):
            stem = d.name.split(".tar")[0].split(".tgz")[0]
            out = _unpack(d, cache / "unpacked" / stem, log)
            return _from_dir(name, info, out, cache, progress, log)
        return None
    if not d.is_dir():
        return None
    if name in ("cifar10", "cifar100"):
        sub = _CIFAR_URLS[name][2]
        if _is_cifar_pickle_dir(d, name) and not _is_imagefolder(d):
            return load_cifar_pickle(d, info)
        if (d / sub).is_dir() and _is_cifar_pickle_dir(d / sub, name):
            return load_cifar_pickle(d / sub, info)
        if _is_imagefolder(d):
            return load_imagefolder(d, info, cache, progress, log)
        jpeg = "cifar10-jpeg" if name == "cifar10" else "cifar100-jpeg"
        if (d / jpeg).is_dir() and _is_imagefolder(d / jpeg):
            return load_imagefolder(d / jpeg, info, cache, progress, log)
        for arc in (f"{jpeg}.tar.gz", Path(_CIFAR_URLS[name][0]).name):
            if (d / arc).is_file():
                return _from_dir(name, info, d / arc, cache, progress, log)
        return None
    # fashion-mnist
    if _has_idx(d):
        return load_idx(d, info)
    for sub in ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist"):
        if _has_idx(d / sub):
            return load_idx(d / sub, info)
    return None


def load_dataset(name: str, data_dir: str | os.PathLike | None = None,
                 cache: str | os.PathLike | None = None, download: bool = True,
                 progress: bool = False, log: Callable[[str], None] = lambda s: None
                 ) -> Splits:
    """Find, (download,) decode and return a dataset in memory.

    With ``data_dir`` only that path is used (a directory in one of the supported
    layouts, a folder holding one, or a ``.tar.gz``). Without it the cache, the shared
    dataset folders and ``/usr/share/datasets`` are searched, then the official files
    are downloaded into the cache (when ``download``).
    """
    name = canonical_name(name)
    info = DATASETS[name]
    cdir = cache_dir(cache)
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        if not d.exists():
            raise DataError(f"data directory {d} does not exist")
        s = _from_dir(name, info, d, cdir, progress, log)
        if s is None:
            raise DataError(f"no {name} data found in {d} (see docs/TRAINING.md for the layouts)")
        return s

    candidates: list[Path] = []
    if name in ("cifar10", "cifar100"):
        sub = _CIFAR_URLS[name][2]
        candidates += [cdir / sub, cdir / "unpacked" / f"{name}-jpeg"]
        candidates += [p / f"{name}-jpeg.tar.gz" for p in shared_dataset_dirs()]
        candidates += [p / f"{name}-jpeg" for p in shared_dataset_dirs()]
        candidates += [p / sub for p in shared_dataset_dirs()]
    else:
        candidates += [SYSTEM_DATASETS / "fashion-mnist"]
        candidates += [p / "fashion-mnist" for p in shared_dataset_dirs()]
        candidates += [cdir / "fashion-mnist"]
    for c in candidates:
        if c.exists():
            s = _from_dir(name, info, c, cdir, progress, log)
            if s is not None:
                return s
    looked = ", ".join(str(c) for c in candidates)
    if not download:
        raise DataError(f"{name} not found (looked in {looked}); pass --data-dir")
    try:
        if name in ("cifar10", "cifar100"):
            url, md5, sub = _CIFAR_URLS[name]
            arc = _download(url, cdir / "downloads" / Path(url).name, md5, log)
            out = _unpack(arc, cdir / "unpacked" / sub, log)
            shutil.rmtree(cdir / sub, ignore_errors=True)
            os.replace(out / sub, cdir / sub)
            shutil.rmtree(out, ignore_errors=True)
            return load_cifar_pickle(cdir / sub, info)
        dest = cdir / "fashion-mnist"
        for stem, md5 in _FASHION_FILES.items():
            if not (dest / f"{stem}.gz").is_file():
                _download(_FASHION_URL + stem + ".gz", dest / f"{stem}.gz", md5, log)
        return load_idx(dest, info)
    except DataError as e:
        raise DataError(f"{name} not found locally and {e}; pass --data-dir DIR "
                        f"(offline? copy the data there; see docs/TRAINING.md)") from None


# --------------------------------------------------------------------------- validation split

def split_train_val(labels: torch.Tensor | np.ndarray, val_size: int, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic, class-stratified hold-out split of a training set.

    Returns sorted ``(train_idx, val_idx)``; the validation set takes ``val_size``
    images spread over the classes in proportion to their frequency. It depends only
    on the labels, ``val_size`` and ``seed`` (not on the training seed)."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    n = len(y)
    if val_size <= 0:
        return torch.arange(n), torch.empty(0, dtype=torch.int64)
    if val_size >= n:
        raise DataError(f"validation size {val_size} is not smaller than the training set ({n})")
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    counts = torch.stack([(y == c).sum() for c in classes]).double()
    quota = torch.floor(counts * val_size / n).long()
    # hand out the remainder to the classes with the largest fractional parts
    rest = val_size - int(quota.sum())
    frac = counts * val_size / n - quota.double()
    order = torch.argsort(frac, descending=True, stable=True)
    quota[order[:rest]] += 1
    val = []
    for c, q in zip(classes, quota):
        idx = torch.nonzero(y == c).flatten()
        perm = idx[torch.randperm(len(idx), generator=g)]
        val.append(perm[:int(q)])
    val_idx = torch.sort(torch.cat(val)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val_idx] = False
    return torch.nonzero(mask).flatten(), val_idx


# --------------------------------------------------------------------------- transforms

class Normalize:
    """uint8 ``(N, C, H, W)`` -> float ``(x / 255 - mean) / std`` per channel.

    This is the network's input transform; checkpoints store ``mean``/``std`` so the
    exporter can fold it into the integer input quantisation."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._cache: dict = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, len(self.mean))
        if key not in self._cache:
            m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            s = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            self._cache[key] = (1.0 / (255.0 * s), m / s)
        scale, shift = self._cache[key]
        return x.float() * scale - shift

    def state(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "scale": 255}


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (zero padding ``pad``, same output size) and random horizontal flip,
    each image of the batch independently; works on any dtype/device, batch-wise."""
    n, c, h, w = x.shape
    dev = x.device
    out = x
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
        rows = (oy[:, None] + torch.arange(h, device=dev)[None, :])          # n, h
        cols = (ox[:, None] + torch.arange(w, device=dev)[None, :])          # n, w
        # gather rows then columns
        xr = torch.gather(xp, 2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
        out = torch.gather(xr, 3, cols[:, None, None, :].expand(n, c, h, w))
    if flip:
        m = torch.rand(n, generator=generator, device=dev) < 0.5
        out = torch.where(m[:, None, None, None], out.flip(3), out)
    return out


# --------------------------------------------------------------------------- batching

class BatchLoader:
    """Batches from in-memory uint8 tensors, with shuffling, batch-wise augmentation,
    normalisation and DistributedSampler-style sharding.

    * ``batch_size`` is the per-process batch.
    * Training (``shuffle=True``): the permutation depends on ``seed`` and the epoch
      (:meth:`set_epoch`) only, so every rank draws the same permutation; it is padded
      by repetition to a multiple of ``world_size`` and rank ``r`` takes every
      ``world_size``-th index from ``r`` (as ``DistributedSampler``), so every rank runs
      the same number of steps.  ``limit_batches`` cuts every epoch short.
    * Evaluation (``shuffle=False``): rank ``r`` takes indices ``r::world_size`` without
      padding, so summing counts over ranks counts each image exactly once; with
      ``limit_batches`` it evaluates evenly spaced images of the split.
    * ``workers > 0`` prepares batches in a background thread (prefetch depth
      ``workers``); torch ops release the GIL, so this overlaps with compute.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor | None,
                 batch_size: int, normalize: Normalize, *, shuffle: bool = False,
                 augment: tuple[int, bool] | None = None, device: torch.device | str = "cpu",
                 rank: int = 0, world_size: int = 1, seed: int = 0, drop_last: bool = False,
                 limit_batches: int | None = None, workers: int = 0):
        self.device = torch.device(device)
        self.x, self.y = x, y
        self.indices = torch.arange(len(x)) if indices is None else indices.long()
        self.batch_size = int(batch_size)
        self.normalize = normalize
        self.shuffle, self.augment = shuffle, augment
        self.rank, self.world_size = rank, world_size
        self.seed, self.drop_last = seed, drop_last
        self.limit = limit_batches
        self.workers = workers
        self.epoch = 0
        if not shuffle and limit_batches is not None:
            # a limited evaluation takes evenly spaced images, not the first ones
            # (ImageFolder data is stored class by class)
            take = min(len(self.indices), limit_batches * self.batch_size * world_size)
            pick = torch.linspace(0, len(self.indices) - 1, take).round().long()
            self.indices = self.indices[pick]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _local_indices(self) -> torch.Tensor:
        idx = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            idx = idx[torch.randperm(len(idx), generator=g)]
            if self.world_size > 1:
                total = -(-len(idx) // self.world_size) * self.world_size
                if total > len(idx):
                    reps = -(-total // len(idx))
                    idx = idx.repeat(reps)[:total]
        return idx[self.rank::self.world_size]

    def _n_local(self) -> int:
        n = len(self.indices)
        if self.world_size == 1:
            return n
        if self.shuffle:
            return -(-n // self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self._n_local()
        nb = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return min(nb, self.limit) if self.limit is not None else nb

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._local_indices()
        nb = len(self)
        gen = None
        if self.augment is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed((self.seed * 1_000_003 + self.epoch) * 1009 + self.rank + 1)
        nonblock = self.device.type == "cuda"
        for b in range(nb):
            bi = idx[b * self.batch_size:(b + 1) * self.batch_size]
            if self.x.device == self.device:
                bi_d = bi.to(self.device)
                xb, yb = self.x.index_select(0, bi_d), self.y.index_select(0, bi_d)
            else:
                xb = self.x.index_select(0, bi)
                yb = self.y.index_select(0, bi)
                if nonblock:
                    xb, yb = xb.pin_memory(), yb.pin_memory()
                xb = xb.to(self.device, non_blocking=nonblock)
                yb = yb.to(self.device, non_blocking=nonblock)
            if self.augment is not None:
                xb = random_crop_flip(xb, self.augment[0], self.augment[1], gen)
            yield self.normalize(xb), yb

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.workers <= 0:
            yield from self._batches()
            return
        import queue
        import threading
        q: queue.Queue = queue.Queue(maxsize=self.workers)
        stop = threading.Event()
        done = object()

        def run():
            try:
                for item in self._batches():
                    if stop.is_set():
                        return
                    q.put(item)
                q.put(done)
            except BaseException as e:  # hand errors to the consumer
                q.put(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while t.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(0.05)


def describe(s: Splits) -> str:
    return (f"{s.info.name}: {len(s.train_x)} train / {len(s.test_x)} test images "
            f"{tuple(s.train_x.shape[1:])}, {len(s.classes)} classes, from {s.source}")


if __name__ == "__main__":  # quick look: python -m quant.data cifar10 [DIR]
    try:
        sp = load_dataset(sys.argv[1] if len(sys.argv) > 1 else "cifar10",
                          sys.argv[2] if len(sys.argv) > 2 else None,
                          progress=sys.stderr.isatty(), log=lambda m: print(m, file=sys.stderr))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(describe(sp))
