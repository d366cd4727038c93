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

__all__ = ["ClockFmax", "Utilization", "PnrReport", "PathStep", "parse_report", "load_report",
           "format_critical_path", "summarize_critical_path", "RESOURCE_NAMES", "ReportError", "EndpointArrival"]

_REPO_ROOT = str(Path(__file__).resolve().parents[1]) + "/"

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
    net_timings : list
        ``detailed_net_timings`` as nextpnr wrote them (``--detailed-timing-report``; empty
        without): per net, the arrival time of its value at every timing endpoint it drives.
    """

    fmax: dict
    utilization: dict
    critical_paths: list = field(default_factory=list)
    net_timings: list = field(default_factory=list)

    def resource(self, name: str) -> Utilization:
        """Use of a resource by our name (``LUT4``) or nextpnr's (``TRELLIS_COMB``); zero if absent."""
        bel = RESOURCE_NAMES.get(name, name)
        return self.utilization.get(bel, Utilization(0, 0))

    def resources(self) -> dict:
        """``{our name: {"used", "available"}}`` for :data:`RESOURCE_NAMES`."""
        return {name: {"used": self.resource(name).used, "available": self.resource(name).available}
                for name in RESOURCE_NAMES}

    def critical_path(self, clock_net: str) -> list:
        """The steps (:class:`PathStep`) of nextpnr's critical path within ``clock_net``; [] if none.

        nextpnr names the path's clocks ``"posedge <net>"``; a path from and to the same clock is
        the one that sets its Fmax.
        """
        for cp in self.critical_paths:
            ends = [str(cp.get(k, "")).split(" ", 1)[-1] for k in ("from", "to")]
            if ends == [clock_net, clock_net]:
                try:
                    return [PathStep.from_json(step) for step in cp.get("path", [])]
                except (AttributeError, TypeError, ValueError) as e:
                    raise ReportError(f"malformed critical path in nextpnr report: {e!r}") from None
        return []

    def late_endpoints(self, clock_net: str, *, top: int | None = None) -> list:
        """The timing endpoints captured by ``clock_net`` launched from it, latest arrival first.

        A list of :class:`EndpointArrival`. nextpnr's report names one critical path per clock; the
        endpoints' arrival times (clock-to-out, logic and routing, no setup) show how many more
        paths are nearly as slow, and where they end. Empty without ``detailed_net_timings``.
        """
        event = f"posedge {clock_net}"
        out = []
        try:
            for nt in self.net_timings:
                if nt.get("event") != event:
                    continue
                for ep in nt.get("endpoints", ()):
                    if ep.get("event") == event:
                        delay = ep["delay"]       # nextpnr 0.7+: [min, max]; older: one number
                        arrival = float(max(delay) if isinstance(delay, list) else delay)
                        out.append(EndpointArrival(arrival, str(ep["cell"]), str(ep["port"]),
                                                   str(nt.get("net", "")), str(nt.get("driver", ""))))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ReportError(f"malformed detailed_net_timings in nextpnr report: {e!r}") from None
        out.sort(key=lambda e: -e.arrival_ns)
        return out if top is None else out[:top]

    def clock(self, *, exclude=()) -> ClockFmax | None:
        """The constrained clock with the lowest achieved frequency, skipping nets in ``exclude``."""
        cands = [c for n, c in self.fmax.items() if n not in exclude]
        return min(cands, key=lambda c: c.achieved) if cands else None


@dataclass(frozen=True)
class EndpointArrival:
    """When the latest value reaches a timing endpoint (a flip-flop's or block's input pin)."""

    arrival_ns: float
    cell: str
    port: str
    net: str
    driver: str


@dataclass(frozen=True)
class PathStep:
    """One step of a critical path: ``clk-to-q``, ``logic``, ``routing`` (with its net) or ``setup``."""

    kind: str
    delay_ns: float
    src: str            # "cell.port"
    dst: str
    src_loc: tuple
    dst_loc: tuple
    net: str = ""
    source: str = ""    # first HDL source line nextpnr names for the net

    @classmethod
    def from_json(cls, step: dict) -> "PathStep":
        def end(key):
            e = step.get(key) or {}
            return f"{e.get('cell', '?')}.{e.get('port', '?')}", tuple(e.get("loc") or ())
        (src, src_loc), (dst, dst_loc) = end("from"), end("to")
        sources = [str(x).removeprefix(_REPO_ROOT) for x in step.get("sources") or [""]]
        return cls(str(step.get("type", "?")), float(step.get("delay", 0.0)), src, dst, src_loc, dst_loc,
                   str(step.get("net", "")), str(sources[0]))


def summarize_critical_path(steps: list, *, top: int = 3) -> dict | None:
    """Totals, ends and the ``top`` longest routed nets of a critical path (``None`` if empty):
    ``{"ns", "routing_ns", "routes", "from", "to", "longest_routes": [PathStep, ...]}``."""
    if not steps:
        return None
    routes = [s for s in steps if s.kind == "routing"]
    return {"ns": sum(s.delay_ns for s in steps), "routing_ns": sum(s.delay_ns for s in routes),
            "routes": len(routes), "from": steps[0].src, "to": steps[-1].dst,
            "longest_routes": sorted(routes, key=lambda s: -s.delay_ns)[:top]}


def format_critical_path(steps: list, *, top: int = 3) -> list:
    """Lines describing a critical path: total, logic vs routing, start and end, the longest routes."""
    cp = summarize_critical_path(steps, top=top)
    if cp is None:
        return ["critical path: none in the report"]
    lines = [f"critical path {cp['ns']:.2f} ns ({cp['routing_ns']:.2f} ns routing in {cp['routes']} nets, "
             f"{cp['ns'] - cp['routing_ns']:.2f} ns cells): {cp['from']} -> {cp['to']}"]
    for s in cp["longest_routes"]:
        where = f" [{s.source}]" if s.source else ""
        lines.append(f"  route {s.delay_ns:5.2f} ns  {s.net}  {s.src_loc} -> {s.dst_loc} "
                     f"({s.dst}){where}")
    return lines


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
    timings = obj.get("detailed_net_timings", [])
    if not isinstance(timings, list):
        raise ReportError("nextpnr report's detailed_net_timings is not a list")
    return PnrReport(fmax=fmax, utilization=util, critical_paths=list(obj.get("critical_paths", [])),
                     net_timings=timings)


def load_report(path) -> PnrReport:
    """Parse a nextpnr report file."""
    try:
        obj = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON ({e})") from None
    return parse_report(obj)


def main(argv=None) -> int:
    """``python -m hw.reports NEXTPNR_REPORT.json [--all]``: Fmax and critical path per clock."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m hw.reports",
                                 description="Print the Fmax and the critical path of each clock from a "
                                             "nextpnr-ecp5 --report JSON file (build/<board>/nextpnr.json).")
    ap.add_argument("report", help="nextpnr's report (e.g. build/ulx3s/nextpnr.json)")
    ap.add_argument("--all", action="store_true", help="list every step of each path, not only the longest routes")
    ap.add_argument("--endpoints", type=int, default=0, metavar="N",
                    help="also list the N timing endpoints of each clock with the latest arrival (needs a report "
                         "written with --detailed-timing-report, as python -m hw.build does)")
    args = ap.parse_args(argv)
    if args.endpoints < 0:
        print(f"error: --endpoints must be 0 or more, not {args.endpoints}", file=sys.stderr)
        return 2
    try:
        rep = load_report(args.report)
        paths = {net: rep.critical_path(net) for net in rep.fmax}
        late = {net: rep.late_endpoints(net, top=args.endpoints) for net in rep.fmax} if args.endpoints else {}
    except (OSError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for net, clk in rep.fmax.items():
        target = f"{clk.constraint:.2f}" if clk.constraint is not None else "-"
        print(f"{net}: Fmax {clk.achieved:.2f} MHz (target {target} MHz)")
        steps = paths[net]
        if args.all:
            for s in steps:
                what = s.net if s.kind == "routing" else s.dst
                print(f"  {s.kind:9s} {s.delay_ns:6.3f} ns  {s.dst_loc}  {what}")
        else:
            for line in format_critical_path(steps):
                print("  " + line)
        if args.endpoints:
            if not rep.net_timings:
                print("  endpoints: none in the report (nextpnr ran without --detailed-timing-report)")
            for e in late.get(net, []):
                print(f"  {e.arrival_ns:6.2f} ns  {e.cell}.{e.port}  (net {e.net})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
