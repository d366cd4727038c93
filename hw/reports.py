"""Reading nextpnr-ecp5's ``--report`` JSON.

nextpnr (0.7 and later) writes, with ``--report FILE``::

    {
      "utilization": {"<bel type>": {"used": int, "available": int}, ...},
      "fmax": {"<clock net>": {"achieved": MHz, "constraint": MHz}, ...},
      "critical_paths": [{"from": "<clock>", "to": "<clock>", "path": [...]}, ...],
      "detailed_net_timings": [...]      # only with --detailed-timing-report
    }

On ECP5 the logic cell is ``TRELLIS_COMB`` (one LUT4, or half of a ``CCU2C``
carry cell; the LUT4 count of the datasheet), flip-flops are ``TRELLIS_FF``,
multipliers ``MULT18X18D``, block RAMs ``DP16KD`` (18 Kbit EBR) and
distributed-RAM write ports ``TRELLIS_RAMW``. :data:`RESOURCE_NAMES` maps the
names we report to those bel types.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ClockFmax", "Utilization", "PnrReport", "parse_report", "load_report",
           "RESOURCE_NAMES", "ReportError"]

#: Name in our reports -> nextpnr-ecp5 bel type.
RESOURCE_NAMES = {
    "MULT18X18D": "MULT18X18D",
    "LUT4": "TRELLIS_COMB",
    "DP16KD": "DP16KD",
    "TRELLIS_FF": "TRELLIS_FF",
    "EHXPLLL": "EHXPLLL",
    "IO": "TRELLIS_IO",
}


class ReportError(ValueError):
    """The file is not a nextpnr report (the message says what is missing)."""


@dataclass(frozen=True)
class ClockFmax:
    """Achieved and constrained frequency of one clock net, in MHz."""

    net: str
    achieved: float
    constraint: float | None

    @property
    def met(self) -> bool:
        return self.constraint is None or self.achieved >= self.constraint


@dataclass(frozen=True)
class Utilization:
    used: int
    available: int

    @property
    def fraction(self) -> float:
        return self.used / self.available if self.available else 0.0


@dataclass(frozen=True)
class PnrReport:
    """A parsed nextpnr report.

    Attributes
    ----------
    fmax : dict[str, ClockFmax]
        By clock net name.
    utilization : dict[str, Utilization]
        By nextpnr bel type (``TRELLIS_COMB``, ``MULT18X18D``...).
    critical_paths : list
        As nextpnr wrote them.
    """

    fmax: dict
    utilization: dict
    critical_paths: list = field(default_factory=list)

    def resource(self, name: str) -> Utilization:
        """Use of a resource by our name (``LUT4``) or nextpnr's (``TRELLIS_COMB``); zero if absent."""
        bel = RESOURCE_NAMES.get(name, name)
        return self.utilization.get(bel, Utilization(0, 0))

    def resources(self) -> dict:
        """``{our name: {"used", "available"}}`` for :data:`RESOURCE_NAMES`."""
        return {name: {"used": self.resource(name).used, "available": self.resource(name).available}
                for name in RESOURCE_NAMES}

    def clock(self, *, exclude=()) -> ClockFmax | None:
        """The constrained clock with the lowest achieved frequency, skipping nets in ``exclude``."""
        cands = [c for n, c in self.fmax.items() if n not in exclude]
        return min(cands, key=lambda c: c.achieved) if cands else None


def parse_report(obj: dict) -> PnrReport:
    """Parse the decoded JSON of a nextpnr report.

    Raises
    ------
    ReportError
        If ``utilization`` or ``fmax`` is missing or malformed.
    """
    if not isinstance(obj, dict):
        raise ReportError("a nextpnr report is a JSON object")
    for key in ("utilization", "fmax"):
        if not isinstance(obj.get(key), dict):
            raise ReportError(f"nextpnr report has no {key!r} object")
    try:
        util = {k: Utilization(int(v["used"]), int(v["available"])) for k, v in obj["utilization"].items()}
        fmax = {k: ClockFmax(k, float(v["achieved"]),
                             None if v.get("constraint") is None else float(v["constraint"]))
                for k, v in obj["fmax"].items()}
    except (KeyError, TypeError, ValueError) as e:
        raise ReportError(f"malformed nextpnr report entry: {e!r}") from None
    return PnrReport(fmax=fmax, utilization=util, critical_paths=list(obj.get("critical_paths", [])))


def load_report(path) -> PnrReport:
    """Parse a nextpnr report file."""
    try:
        obj = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON ({e})") from None
    return parse_report(obj)
