"""What ``python host/run.py`` prints and writes with ``--report``.

The figures of one inference are computed here from plain data (logits, the
golden logits, cycles and MACs per layer, the array shape, the clock), so that
the text on stdout and the JSON report always say the same thing:

* the check: every logit word against the golden model's (BIT-EXACT / MISMATCH);
* the top-k classes, with probabilities = softmax of the dequantised logits
  (integer logit x the output tensor's scale);
* per layer: cycles, MACs, utilisation = MACs / (rows x cols x cycles);
* the whole network: total cycles, utilisation, and frames per second
  = engine clock / total cycles (compute only: the host link's transfer time is
  not counted), with the clock's source (a build report, ``--fmax``, or an
  assumed target clock, said so).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

import numpy as np

__all__ = ["Clock", "Mismatch", "ImageReport", "compare_logits", "top_k", "layer_rows", "label_from_name",
           "format_image", "format_header", "format_summary", "write_json"]


@dataclass(frozen=True)
class Clock:
    """The engine clock used for FPS: ``mhz`` and where it comes from."""

    mhz: float
    source: str           # "--fmax", a build report path, or "assumed"
    assumed: bool = False
    note: str = ""        # why it is assumed, when it is

    def describe(self) -> str:
        if self.assumed:
            return f"{self.note}: FPS at an assumed {self.mhz:g} MHz (the engine's target clock)"
        return f"engine clock {self.mhz:g} MHz ({self.source})"


@dataclass(frozen=True)
class Mismatch:
    """The first logit that differs; ``expected``/``got`` are None when the lengths differ."""

    index: int
    expected: int | None
    got: int | None
    count: int            # how many words differ
    expected_len: int
    got_len: int

    def describe(self) -> str:
        if self.expected is None or self.got is None:
            return f"MISMATCH: the engine returned {self.got_len} logits, the golden model {self.expected_len}"
        return (f"MISMATCH: {self.count} of {self.expected_len} logits differ; first at index {self.index}: "
                f"expected {self.expected}, got {self.got}")


def compare_logits(expected, got) -> Mismatch | None:
    """None when every word is equal, else the first difference."""
    e = np.asarray(expected, dtype=np.int64).ravel()
    g = np.asarray(got, dtype=np.int64).ravel()
    if e.shape != g.shape:
        return Mismatch(min(len(e), len(g)), None, None, abs(len(e) - len(g)), len(e), len(g))
    diff = np.flatnonzero(e != g)
    if not len(diff):
        return None
    i = int(diff[0])
    return Mismatch(i, int(e[i]), int(g[i]), len(diff), len(e), len(g))


def class_name(classes, index: int) -> str:
    return classes[index] if index < len(classes) else f"class {index}"


def top_k(logits, scale: float, classes, k: int) -> list[dict]:
    """The ``k`` largest logits: index, class name, integer logit, softmax probability of logit x scale."""
    q = np.asarray(logits, dtype=np.int64).ravel()
    real = q.astype(np.float64) * float(scale)
    p = np.exp(real - real.max())
    p /= p.sum()
    order = np.argsort(-q, kind="stable")[:max(1, k)]
    return [{"index": int(i), "class": class_name(classes, int(i)), "logit": int(q[i]), "probability": float(p[i])}
            for i in order]


def layer_rows(names, cycles, macs, rows: int, cols: int) -> list[dict]:
    """Per layer: name, cycles, MACs, utilisation of the rows x cols multiplier array."""
    if not len(names) == len(cycles) == len(macs):
        raise ValueError(f"{len(names)} layer names, {len(cycles)} cycle counts and {len(macs)} MAC counts")
    return [{"layer": str(n), "cycles": int(c), "macs": int(m), "utilisation": _util(m, c, rows, cols)}
            for n, c, m in zip(names, cycles, macs)]


def _util(macs: int, cycles: int, rows: int, cols: int) -> float | None:
    return macs / (rows * cols * cycles) if cycles > 0 and rows * cols > 0 else None


def label_from_name(path: str | Path, classes) -> int | None:
    """The class a file name ends with (``cifar10_test_0000_cat.jpg`` -> cat), if it is one of ``classes``."""
    def norm(s: str) -> str:
        return re.sub(r"[^0-9a-z]+", "-", s.lower()).strip("-")

    last = Path(path).stem.rsplit("_", 1)[-1]
    names = [norm(c) for c in classes]
    return names.index(norm(last)) if norm(last) in names else None


@dataclass
class ImageReport:
    """Everything about one inference."""

    source: str
    logits: list[int]
    top: list[dict]
    layers: list[dict]
    total_cycles: int
    rows: int
    cols: int
    clock: Clock
    expected: list[int] | None = None      # golden logits; None with --no-check
    mismatch: Mismatch | None = None
    label: int | None = None
    label_name: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def checked(self) -> bool:
        return self.expected is not None

    @property
    def bit_exact(self) -> bool | None:
        return None if not self.checked else self.mismatch is None

    @property
    def macs(self) -> int:
        return sum(r["macs"] for r in self.layers)

    @property
    def utilisation(self) -> float | None:
        return _util(self.macs, self.total_cycles, self.rows, self.cols)

    @property
    def fps(self) -> float | None:
        return self.clock.mhz * 1e6 / self.total_cycles if self.total_cycles > 0 else None

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "label": None if self.label is None else {"index": self.label, "class": self.label_name},
            "check": ("skipped" if not self.checked else "bit-exact" if self.bit_exact else "mismatch"),
            "mismatch": None if self.mismatch is None else {
                "first_index": self.mismatch.index, "expected": self.mismatch.expected, "got": self.mismatch.got,
                "differing_words": self.mismatch.count},
            "logits": self.logits,
            "golden_logits": self.expected,
            "top_k": self.top,
            "layers": self.layers,
            "total_cycles": self.total_cycles,
            "macs": self.macs,
            "utilisation": self.utilisation,
            "fps": self.fps,
            "latency_ms": None if self.fps is None else 1e3 / self.fps,
            **self.extra,
        }


# ----------------------------------------------------------------------------- text


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:5.1f} %"


def format_check(r: ImageReport) -> str:
    if not r.checked:
        return "check     skipped (--no-check)"
    if r.mismatch is None:
        return f"check     BIT-EXACT: all {len(r.logits)} logits equal the golden model's"
    return f"check     {r.mismatch.describe()}"


def format_top(r: ImageReport, scale: float) -> list[str]:
    lines = [f"top-{len(r.top)}     probabilities = softmax of the dequantised logits (integer logit x {scale:.4g})"]
    width = max(len(t["class"]) for t in r.top)
    for rank, t in enumerate(r.top, 1):
        mark = "  <- label" if r.label is not None and t["index"] == r.label else ""
        lines.append(f"  {rank:>2}. {t['class']:<{width}}  logit {t['logit']:>12}  p {t['probability']:6.3f}{mark}")
    if r.label is not None:
        verdict = "top-1 correct" if r.top[0]["index"] == r.label else "top-1 wrong"
        lines.append(f"  label {r.label_name} (from the file name): {verdict}")
    return lines


def format_layers(r: ImageReport) -> list[str]:
    width = max([len("layer"), *(len(x["layer"]) for x in r.layers)])
    head = f"  {'layer':<{width}}  {'cycles':>12}  {'MACs':>14}  {'util':>7}"
    lines = [f"cycles    on the {r.rows}x{r.cols} multiplier array; util = MACs / ({r.rows}*{r.cols}*cycles)",
             head, "  " + "-" * (len(head) - 2)]
    for x in r.layers:
        lines.append(f"  {x['layer']:<{width}}  {x['cycles']:>12,}  {x['macs']:>14,}  {_pct(x['utilisation']):>7}")
    layer_sum = sum(x["cycles"] for x in r.layers)
    if r.total_cycles != layer_sum:
        lines.append(f"  {'(between layers)':<{width}}  {r.total_cycles - layer_sum:>12,}  {'':>14}  {'':>7}")
    lines.append("  " + "-" * (len(head) - 2))
    lines.append(f"  {'total':<{width}}  {r.total_cycles:>12,}  {r.macs:>14,}  {_pct(r.utilisation):>7}")
    return lines


def format_speed(r: ImageReport) -> str:
    if r.fps is None:
        return "speed     no cycles counted"
    return (f"speed     {r.fps:,.1f} frames/s, {1e3 / r.fps:.3f} ms per frame (compute only, link transfers "
            f"not counted)\nclock     {r.clock.describe()}")


def format_image(r: ImageReport, scale: float, *, show_layers: bool = True) -> str:
    lines = [format_check(r), *format_top(r, scale)]
    if show_layers:
        lines += format_layers(r)
    else:
        lines.append(f"cycles    {r.total_cycles:,} in total, per layer as above")
    lines.append(format_speed(r))
    return "\n".join(lines)


def format_summary(reports: list[ImageReport]) -> str:
    checked = [r for r in reports if r.checked]
    bad = [r for r in checked if not r.bit_exact]
    if not checked:
        return f"summary   {len(reports)} image(s) run, golden-model check skipped"
    if bad:
        return f"summary   MISMATCH on {len(bad)} of {len(reports)} image(s)"
    return f"summary   BIT-EXACT on all {len(reports)} image(s)"


def format_header(fields: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in fields)
    return "\n".join(f"{k:<{max(width, 9)}} {v}" for k, v in fields)


# ----------------------------------------------------------------------------- JSON


def plain(obj):
    """Dataclasses and numpy values as JSON-friendly data."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, report: dict) -> None:
    """Write ``report`` (OSError propagates)."""
    Path(path).write_text(json.dumps(plain(report), indent=2) + "\n")
