"""pytest configuration for the RTL cosimulation tests in ``sim/``.

* makes the repository root importable (``hw``, ``quant``, ``sim``);
* registers the ``sim`` marker (needs a simulator build; ``slow`` is registered
  in ``pyproject.toml``);
* prints the simulator environment once per session.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "sim: builds and runs an HDL simulator (Verilator or Icarus)")


def pytest_report_header(config):
    from sim.harness import default_simulator

    try:
        return f"shiftfpga sim: simulator={default_simulator()} (SHIFTFPGA_SIM, SHIFTFPGA_SEED, SHIFTFPGA_WAVES)"
    except ValueError as exc:
        return f"shiftfpga sim: {exc}"
