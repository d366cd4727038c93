"""Whole networks on the simulated board, every output of every layer against the golden model.

The board is the Verilator-built :class:`hw.soc.EngineSoC` (link engine + engine)
behind a TCP socket (``hw.soc.simulated_board``); the host side is exactly what
``python host/run.py`` uses (``host.compile``, ``host.accelerator``, the link
protocol). Programs are compiled with ``keep_all`` so that every tensor stays
in the activation memory and can be read back after the run; every word of
every stored tensor is compared (with fused CSC passes, the default, the
expanded mid tensors are never stored; the block outputs they feed are). The first run builds the board (a few minutes on two
cores; cached in ``sim_build/board/``).
"""

from __future__ import annotations

import logging
import socket
import warnings

import numpy as np
import pytest
import torch

from host.accelerator import Accelerator
from host.compile import compile_program, plan_passes
from hw.soc import simulated_board
from quant import golden
from quant.export import to_program, untrained_net
from sim.harness import seed_from_env
from sim.test_engine import first_mismatch

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def board():
    with simulated_board(progress=print) as b:
        yield b


def _program(expansion: int, bits: str):
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    net, shape = untrained_net("shiftresnet20", bits, 0, {"expansion": expansion})
    return to_program(net, model="shiftresnet20", model_args={"expansion": expansion}, input_shape=shape)


@pytest.mark.parametrize("bits, fuse", [("w8a8", True), ("w4a4", True), ("w8a8", False)],
                         ids=["w8a8", "w4a4", "w8a8-unfused"])
def test_shiftresnet20_every_layer_bit_exact(board, bits, fuse):
    program = _program(1, bits)
    seed = seed_from_env()
    acc = Accelerator(board.link(timeout=5.0))
    compiled = compile_program(program, acc.params, keep_all=True, fuse=fuse)
    passes = plan_passes(program, acc.params, fuse=fuse)
    mids = {ps.layer.input for ps in passes if ps.expand}
    assert len(mids) == (9 if fuse else 0)      # every CSC block
    acc.load(compiled)
    for k in range(2):
        image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(seed + k))
        x = golden.quantize_input(program, image)
        result = acc.infer(x.numpy(), keep_all=True)
        expected = golden.run(program, x)
        assert set(result.outputs) == set(expected) - mids
        problem = first_mismatch(program, expected, result.outputs)
        assert problem is None, f"image seed {seed + k} (SHIFTFPGA_SEED={seed}), {bits}: {problem}"
        assert np.array_equal(result.logits, expected[program.output].numpy().reshape(-1))
        assert len(result.layer_cycles) == len(passes)
        print(f"{bits} image {k}: {result.total_cycles} cycles, {len(result.outputs)} tensors bit-exact")


def test_engine_survives_garbage_on_the_link(board):
    """Junk bytes and a half frame on the wire; the next inference is still right."""
    program = _program(1, "w8a8")
    with socket.create_connection(("127.0.0.1", board.port), timeout=5) as raw:
        raw.sendall(bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)) + b"\xa5\x5a\x50\x01")
    acc = Accelerator(board.link(timeout=5.0))
    compiled = compile_program(program, acc.params)
    acc.load(compiled)
    x = golden.quantize_input(program, torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(7)))
    result = acc.infer(x.numpy())
    assert np.array_equal(result.logits, golden.run(program, x)[program.output].numpy().reshape(-1))
