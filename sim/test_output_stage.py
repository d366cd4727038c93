"""RTL cosimulation of the output stage (``hw.output_stage``) against ``quant.numerics``.

One Verilator build; inside it ``SHIFTFPGA_TB_CONFIGS`` (default 150) random layer
configurations (modes QUANT / RAW / POOL, residual on/off, random clamps and
tables) run back to back. Reproduce a failure with the seed it prints:
``SHIFTFPGA_SEED=<n> pytest sim/test_output_stage.py``.
"""

import os

import pytest

from hw.output_stage import OutputStage
from sim.harness import run_cocotb

STAGE = dict(lanes=4, max_channels=64, max_pool_pixels=4096, fifo_depth=32)


@pytest.mark.sim
def test_output_stage():
    run_cocotb(
        OutputStage(**STAGE),
        test_module="tb_output_stage",
        build_name="output_stage_l4",
        env={"TB_STAGE": STAGE, "TB_CONFIGS": os.environ.get("SHIFTFPGA_TB_CONFIGS", "150")},
    )
