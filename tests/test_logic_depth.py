"""bench/logic_depth.py on hand-made netlists: the estimate follows the documented delays."""

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("logic_depth", Path(__file__).parent.parent / "bench" / "logic_depth.py")
logic_depth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(logic_depth)


def _cell(kind, conns, dirs):
    return {"type": kind, "connections": conns, "port_directions": dirs, "parameters": {}}


def _ff(d, q):
    return _cell("TRELLIS_FF", {"DI": [d], "Q": [q]}, {"DI": "input", "Q": "output"})


def _lut(a, z):
    return _cell("LUT4", {"A": [a], "Z": [z]}, {"A": "input", "Z": "output"})


def _netlist(cells):
    return {"modules": {"top": {"attributes": {"top": 1}, "cells": cells,
                                "netnames": {"q0": {"bits": [2]}, "n1": {"bits": [3]}, "n2": {"bits": [4]}}}}}


def test_two_luts_between_registers_cost_two_lut_delays_and_routes():
    cells = {"r0": _ff(9, 2), "l1": _lut(2, 3), "l2": _lut(3, 4), "r1": _ff(4, 9)}
    ends, info = logic_depth.analyse(_netlist(cells))
    worst = ends[0]
    assert worst[2] == "r1" and worst[3] == "DI"
    # the documented model: 0.52 ns clock-to-out, 0.24 ns per LUT, a 0.65 ns route after each cell
    assert worst[0] == pytest.approx(0.52 + 0.65 + 2 * (0.24 + 0.65))
    assert [net for _, net, _ in logic_depth.path_of(info, worst[1])] == ["q0", "n1", "n2"]


def test_a_direct_register_to_register_path_ranks_below_the_deeper_one():
    cells = {"r0": _ff(7, 2), "l1": _lut(2, 3), "l2": _lut(3, 4), "r1": _ff(4, 9), "r2": _ff(2, 8)}  # 7: undriven
    ends, _ = logic_depth.analyse(_netlist(cells))
    assert [e[2] for e in ends] == ["r1", "r2"]


def test_cli_rejects_a_file_that_is_not_a_netlist(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert logic_depth.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert logic_depth.main([str(tmp_path / "missing.json")]) == 2
