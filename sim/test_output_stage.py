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
#: the 85F's table depth (128 entries per lane), which goes into block RAM read through both ports
#: (hw.dual_read), here on the DP16KD simulation model
STAGE_BLOCK_RAM = dict(STAGE, max_channels=512, block_ram="model")


@pytest.mark.sim
@pytest.mark.parametrize("name, stage", [("l4", STAGE), ("l4_bram", STAGE_BLOCK_RAM)])
def test_output_stage(name, stage):
    run_cocotb(
        OutputStage(**stage),
        test_module="tb_output_stage",
        build_name=f"output_stage_{name}",
        env={"TB_STAGE": stage, "TB_CONFIGS": os.environ.get("SHIFTFPGA_TB_CONFIGS", "150")},
    )
