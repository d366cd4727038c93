"""Tests of the shift operation, its offset presets and the Shift module."""

import itertools
import time
import zlib

import numpy as np
import pytest
import torch

from models.shift import (Shift, check_offsets, grouped_offsets,
                          interleaved_offsets, shift)


def reference_shift(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Slow, obviously-correct shift: explicit loops over every element."""
    n, c, h, w = x.shape
    out = np.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            dy, dx = int(offsets[ch, 0]), int(offsets[ch, 1])
            for y in range(h):
                for xx in range(w):
                    sy, sx = y + dy, xx + dx
                    if 0 <= sy < h and 0 <= sx < w:
                        out[b, ch, y, xx] = x[b, ch, sy, sx]
    return out


def reference_interleaved(channels, k, d):
    """The authors' rule written out per channel."""
    rows = []
    k2 = k * k
    for c in range(channels):
        if c >= channels - channels % k2:
            rows.append((0, 0))
        else:
            i = c % k2
            rows.append((d * (i // k - k // 2), d * (i % k - k // 2)))
    return rows


PRESETS = {"interleaved": interleaved_offsets, "grouped": grouped_offsets}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test machine is small and shared: intra-op threads only contend.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize(
    "preset,k,d,hw",
    list(itertools.product(PRESETS, (3, 5), (1, 2), ((7, 9), (8, 6)))))
def test_shift_matches_loop_reference(preset, k, d, hw):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((preset, k, d, hw)).encode()))
    c = 2 * k * k + 3  # remainder channels exercised too
    x = torch.randn(2, c, *hw, generator=gen)
    offsets = PRESETS[preset](c, k, d)
    got = shift(x, offsets)
    want = reference_shift(x.numpy(), offsets.numpy())
    np.testing.assert_array_equal(got.numpy(), want)
    # the module gives the same result
    np.testing.assert_array_equal(Shift(offsets)(x).numpy(), want)


@pytest.mark.parametrize("hw", [(5, 5), (6, 7)])
def test_shift_arbitrary_table(hw):
    gen = torch.Generator().manual_seed(7)
    c = 13
    x = torch.randn(3, c, *hw, generator=gen)
    offsets = torch.randint(-4, 5, (c, 2), generator=gen)
    offsets[0] = torch.tensor([9, -9])   # entirely outside: all zeros
    offsets[1] = torch.tensor([0, 0])
    got = shift(x, offsets)
    np.testing.assert_array_equal(got.numpy(),
                                  reference_shift(x.numpy(), offsets.numpy()))
    assert torch.count_nonzero(got[:, 0]) == 0
    assert torch.equal(got[:, 1], x[:, 1])


def test_shift_direction_convention():
    # dx = +1 reads the right-hand neighbour: the picture moves left.
    x = torch.arange(12.0).view(1, 1, 3, 4)
    y = shift(x, torch.tensor([[0, 1]]))
    assert y[0, 0].tolist() == [[1, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0]]
    y = shift(x, torch.tensor([[1, 0]]))
    assert y[0, 0].tolist() == [[4, 5, 6, 7], [8, 9, 10, 11], [0, 0, 0, 0]]


@pytest.mark.parametrize("k,d", [(3, 1), (3, 2), (5, 1), (5, 3), (7, 1)])
@pytest.mark.parametrize("channels", [1, 8, 9, 20, 50])
def test_interleaved_rule(channels, k, d):
    table = interleaved_offsets(channels, k, d)
    assert table.dtype == torch.int64 and table.shape == (channels, 2)
    assert [tuple(r) for r in table.tolist()] == \
        reference_interleaved(channels, k, d)


def test_interleaved_examples():
    t = interleaved_offsets(20, 3, 1).tolist()
    assert t[0] == [-1, -1] and t[1] == [-1, 0] and t[2] == [-1, 1]
    assert t[4] == [0, 0] and t[8] == [1, 1] and t[9] == [-1, -1]
    assert t[18] == [0, 0] and t[19] == [0, 0]   # 20 mod 9 = 2 not shifted
    assert interleaved_offsets(9, 3, 2).tolist()[0] == [-2, -2]


@pytest.mark.parametrize("k,d", [(3, 1), (5, 2), (7, 1)])
def test_grouped_rule(k, d):
    k2 = k * k
    channels = 3 * k2 + 4
    table = grouped_offsets(channels, k, d).tolist()
    for c in range(channels):
        if c < 3 * k2:
            i = c // 3
            assert table[c] == [d * (i // k - k // 2), d * (i % k - k // 2)]
        else:
            assert table[c] == [0, 0]
    # fewer channels than directions: nothing moves
    assert grouped_offsets(k2 - 1, k, d).abs().sum() == 0


def test_presets_cover_every_direction_equally():
    for fn in (interleaved_offsets, grouped_offsets):
        t = fn(5 * 25, 5, 1)
        dirs, counts = torch.unique(t, dim=0, return_counts=True)
        assert len(dirs) == 25 and bool((counts == 5).all())
        assert int(t.abs().max()) == 2


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 9, 4, 5, dtype=torch.float64, generator=gen,
                    requires_grad=True)
    offsets = torch.randint(-2, 3, (9, 2), generator=gen)
    assert torch.autograd.gradcheck(lambda t: shift(t, offsets), (x,))
    m = Shift.interleaved(9, 3, 1)
    assert torch.autograd.gradcheck(m, (x,))


def test_gradient_is_transposed_shift():
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    offsets = torch.tensor([[1, 0], [0, -2], [2, 2], [0, 0]])
    g = torch.randn(1, 4, 5, 5)
    (shift(x, offsets) * g).sum().backward()
    # adjoint of "read at +o" is "read at -o"
    np.testing.assert_allclose(x.grad.numpy(),
                               reference_shift(g.numpy(), -offsets.numpy()))


def test_shift_module_buffer_and_no_params():
    m = Shift.grouped(18, 3, 2)
    assert "offsets" in dict(m.named_buffers())
    assert m.offsets.dtype == torch.int64 and m.offsets.shape == (18, 2)
    assert "offsets" in m.state_dict()
    assert list(m.parameters()) == []
    assert m.channels == 18 and m.max_offset == 2
    m = m.double()
    assert m.offsets.dtype == torch.int64
    m2 = Shift.preset("interleaved", 18, 3, 2)
    assert torch.equal(m2.offsets, interleaved_offsets(18, 3, 2))
    assert torch.equal(Shift.interleaved(18).offsets, interleaved_offsets(18))


def test_shift_module_follows_a_changed_table_and_size():
    """The module keeps its index tensors between calls; they must follow the table
    (load_state_dict, a new buffer) and the image size, never serve a stale shift."""
    rng = np.random.default_rng(7)
    m = Shift.interleaved(9, 3, 1)
    for h, w in [(5, 6), (5, 6), (4, 7)]:
        x = torch.randn(2, 9, h, w, dtype=torch.float64)
        assert np.array_equal(m(x).numpy(), reference_shift(x.numpy(), m.offsets.numpy()))
    table = torch.as_tensor(rng.integers(-2, 3, size=(9, 2)))
    m.load_state_dict({"offsets": table})  # copies into the same buffer
    x = torch.randn(1, 9, 6, 6, dtype=torch.float64)
    assert np.array_equal(m(x).numpy(), reference_shift(x.numpy(), table.numpy()))
    m.offsets = torch.zeros(9, 2, dtype=torch.int64)  # a new buffer
    assert torch.equal(m(x), x)


def test_shift_preserves_dtype_and_shape():
    x = torch.randn(2, 9, 4, 4, dtype=torch.float64)
    y = Shift.interleaved(9)(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    z = shift(x, torch.zeros(9, 2, dtype=torch.int64))
    assert torch.equal(z, x) and z.data_ptr() != x.data_ptr()


def _graph_size(t: torch.Tensor) -> int:
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo.extend(f for f, _ in fn.next_functions)
    return len(seen)


def test_shift_is_vectorised():
    # A loop over channels or groups would grow the autograd graph with C.
    sizes = []
    for c in (9, 900):
        x = torch.randn(1, c, 6, 6, requires_grad=True)
        sizes.append(_graph_size(shift(x, interleaved_offsets(c, 3, 2))))
    assert sizes[0] == sizes[1] <= 6  # pad, flatten, gather, view (+ the leaf)
    # and a big layer runs in well under a second
    x = torch.randn(2, 2048, 16, 16)
    m = Shift.interleaved(2048, 7, 2)
    t = time.perf_counter()
    m(x)
    assert time.perf_counter() - t < 2.0


@pytest.mark.parametrize("bad", [
    torch.zeros(4, 3, dtype=torch.int64),
    torch.zeros(4, dtype=torch.int64),
    torch.zeros(2, 4, 2, dtype=torch.int64),
    torch.zeros(4, 2),                       # float table
    torch.zeros(0, 2, dtype=torch.int64),
])
def test_bad_tables_raise(bad):
    with pytest.raises(ValueError):
        check_offsets(bad)
    with pytest.raises(ValueError):
        Shift(bad)


def test_channel_mismatch_and_bad_input_raise():
    m = Shift.interleaved(9)
    with pytest.raises(ValueError, match="9 rows but the input has 8"):
        m(torch.zeros(1, 8, 4, 4))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        m(torch.zeros(9, 4, 4))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        m([[1.0, 2.0]])


@pytest.mark.parametrize("fn", [interleaved_offsets, grouped_offsets])
def test_bad_preset_arguments_raise(fn):
    with pytest.raises(ValueError, match="odd"):
        fn(16, 4)
    with pytest.raises(ValueError):
        fn(16, 0)
    with pytest.raises(ValueError, match="dilation"):
        fn(16, 3, 0)
    with pytest.raises(ValueError, match="channels"):
        fn(0, 3)
    with pytest.raises(ValueError):
        Shift.preset("diagonal", 16)
