"""Golden model behaviours not covered by the export tests."""

import pytest
import torch

from quant import golden
from quant.program import ProgramError
from quant.synthetic import random_program


def test_batch_equals_single_images():
    p = random_program(2)
    xb = torch.randint(-128, 128, (3, 8, 8, 3))
    batch = golden.run(p, xb)
    for i in range(3):
        single = golden.run(p, xb[i])
        for name in single:
            assert torch.equal(single[name], batch[name][i]), name


def test_input_quantisation_rounds_half_up_and_clamps():
    p = random_program(0)  # input scale 1/64, mean 0.5, std 0.25
    img = torch.full((3, 8, 8), 0.5)
    img[0, 0, 0] = 0.5 + 0.25 * 0.5 / 64  # exactly half a step above the mean
    img[1, 0, 0] = 1.0  # (1 - .5) / .25 = 2.0 -> 128 -> clamped to 127
    img[2, 0, 0] = 0.5 - 0.25 * 0.5 / 64  # half a step below: ties go up, to 0
    q = golden.quantize_input(p, img)
    assert q.shape == (8, 8, 3)
    assert q[0, 0].tolist() == [1, 127, 0]
    assert int(q[1:, 1:].abs().max()) == 0


def test_wrong_image_size_is_one_clear_error():
    p = random_program(0)
    with pytest.raises(ProgramError, match="expects 8x8x3"):
        golden.quantize_input(p, torch.zeros(3, 32, 32))
    with pytest.raises(ProgramError, match="outside"):
        golden.run(p, torch.full((8, 8, 3), 1000))
