"""The integer primitives against independent references (Python integers, float convolutions)."""

from fractions import Fraction
import math
import random

import pytest
import torch
import torch.nn.functional as F

from quant import numerics


def _round_half_up(v: int, s: int) -> int:
    return math.floor(Fraction(v, 2**s) + Fraction(1, 2))


@pytest.mark.parametrize("seed", range(3))
def test_round_shift_is_round_half_up(seed):
    rng = random.Random(seed)
    values = [rng.randint(-(2**40), 2**40) for _ in range(300)] + [-3, -2, -1, 0, 1, 2, 3, 5, -5]
    for s in (0, 1, 2, 7, 16, 31, 47):
        got = numerics.round_shift(torch.tensor(values), torch.tensor(s)).tolist()
        assert got == [_round_half_up(v, s) for v in values]


def test_ties_round_towards_plus_infinity():
    got = numerics.round_shift(torch.tensor([-3, -1, 1, 3]), torch.tensor(1)).tolist()
    assert got == [-1, 0, 1, 2]  # -1.5 -> -1, -0.5 -> 0, 0.5 -> 1, 1.5 -> 2


def test_requantize_per_channel_and_clamp():
    acc = torch.tensor([[1000, -1000, 7], [-(2**30), 2**30, 0]])
    m = torch.tensor([3, 5, 65535])
    s = torch.tensor([4, 6, 16])
    got = numerics.requantize(acc, m, s, -128, 127)
    for idx in range(2):
        for c in range(3):
            want = max(-128, min(127, _round_half_up(int(acc[idx, c]) * int(m[c]), int(s[c]))))
            assert int(got[idx, c]) == want


def _slow_shift(x, table):
    h, w, _ = x.shape
    out = torch.zeros(h, w, len(table), dtype=torch.int64)
    for j, (src, dy, dx) in enumerate(table):
        for y in range(h):
            for xx in range(w):
                if 0 <= y + dy < h and 0 <= xx + dx < w:
                    out[y, xx, j] = x[y + dy, xx + dx, src]
    return out


@pytest.mark.parametrize("h,w", [(5, 7), (6, 6), (1, 4), (3, 1)])
def test_shift_gather_matches_loops(h, w):
    g = torch.Generator().manual_seed(h * 10 + w)
    c = 6
    x = torch.randint(-128, 128, (h, w, c), generator=g)
    table = [(random.Random(j).randrange(c), dy, dx) for j, (dy, dx) in
             enumerate([(0, 0), (-1, 1), (2, -2), (1, 0), (0, -1), (-4, 3), (5, 5), (-1, -1)])]
    assert torch.equal(numerics.shift_gather(x, torch.tensor(table)), _slow_shift(x, table))


def test_shift_gather_rejects_bad_source():
    with pytest.raises(ValueError, match="source channel"):
        numerics.shift_gather(torch.zeros(2, 2, 3, dtype=torch.int64), torch.tensor([[3, 0, 0]]))


@pytest.mark.parametrize("stride", [1, 2])
def test_conv1x1_matches_float_conv(stride):
    g = torch.Generator().manual_seed(stride)
    x = torch.randint(0, 256, (9, 7, 13), generator=g)
    w = torch.randint(-127, 128, (11, 13), generator=g)
    b = torch.randint(-(2**20), 2**20, (11,), generator=g)
    got = numerics.conv1x1_acc(x, w, b, stride)
    # float64 is exact here: every partial sum is far below 2**53
    ref = F.conv2d(x.permute(2, 0, 1)[None].double(), w[:, :, None, None].double(), b.double(), stride=stride)
    assert got.shape == (math.ceil(9 / stride), math.ceil(7 / stride), 11)
    assert torch.equal(got, ref[0].permute(1, 2, 0).round().long())


def test_accumulator_bound_fits_acc_bits():
    worst = 8192 * 127 * 255 + (1 << 30)
    assert worst < 2 ** (numerics.ACC_BITS - 1)


def test_residual_add_and_pool():
    y = torch.tensor([[[100, -5]]])
    r = torch.tensor([[[100, 3]]])
    got = numerics.residual_add(y, r, 3, 1, -128, 127)  # r * 1.5, rounded half up
    assert got.tolist() == [[[127, -5 + _round_half_up(9, 1)]]]
    x = torch.arange(2 * 4 * 3).view(2, 4, 3)
    pooled = numerics.global_avgpool(x, 1, 3, -128, 127)  # mean over 8 pixels
    assert pooled.tolist() == [_round_half_up(int(x[..., c].sum()), 3) for c in range(3)]


def test_ranges():
    assert numerics.act_range(8, True) == (-128, 127)
    assert numerics.act_range(8, False) == (0, 255)
    assert numerics.act_range(4, False) == (0, 15)
    assert numerics.weight_range(8) == (-127, 127)
    assert numerics.weight_range(4) == (-7, 7)


@pytest.mark.parametrize("factor", [1.0, 2.0**-6, 1 / 9, 3.7e-3, 0.999999, 1234.5, 2.0**-40])
def test_quantize_multiplier_is_accurate_and_in_range(factor):
    m, s = numerics.quantize_multiplier(factor)
    assert 1 <= m < 2**numerics.MULT_BITS and 0 <= s <= numerics.SHIFT_MAX
    assert abs(m / 2**s - factor) <= factor * 2.0**-15
    if factor == 2.0**-6:
        v = torch.arange(-1000, 1000)
        assert torch.equal(numerics.round_shift(v * m, torch.tensor(s)), numerics.round_shift(v, torch.tensor(6)))


@pytest.mark.parametrize("factor", [0.0, -1.0, float("nan"), 2.0**17, 2.0**-60])
def test_quantize_multiplier_rejects_unrepresentable(factor):
    with pytest.raises(ValueError):
        numerics.quantize_multiplier(factor)
