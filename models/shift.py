"""The shift operation (Wu et al., CVPR 2018) and its offset tables.

Contract shared with the hardware and the golden model
------------------------------------------------------
For a per-channel offset table ``offsets`` (``LongTensor [C, 2]``, one
``(dy, dx)`` row per channel)::

    out[n, c, y, x] = in[n, c, y + dy[c], x + dx[c]]

and zero wherever ``y + dy[c]`` or ``x + dx[c]`` falls outside the image.
A positive ``dx`` therefore moves the picture *left* (the output pixel reads
its right-hand neighbour). The table is arbitrary: the presets below
(the authors' interleaving, the paper's grouping, any dilation) are just
ways of filling it.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

__all__ = [
    "shift",
    "Shift",
    "interleaved_offsets",
    "grouped_offsets",
    "check_offsets",
    "GROUPINGS",
]


def _check_kernel(kernel_size: int, dilation: int) -> None:
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool):
        raise ValueError(f"kernel_size must be an int, got {kernel_size!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be a positive odd integer, got {kernel_size}")
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}")


def _check_channels(channels: int) -> None:
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")


def _direction_table(kernel_size: int, dilation: int) -> torch.Tensor:
    """The k*k directions in raster order: row i = (dy, dx) of direction i.

    Direction i has dx = d*(i mod k - k//2), dy = d*(i div k - k//2), so
    direction 0 is the top-left neighbour and k*k//2 is the centre (0, 0).
    """
    k, half = kernel_size, kernel_size // 2
    i = torch.arange(k * k)
    dy = dilation * (i // k - half)
    dx = dilation * (i % k - half)
    return torch.stack([dy, dx], dim=1)


def interleaved_offsets(channels: int, kernel_size: int = 3,
                        dilation: int = 1) -> torch.Tensor:
    """Offset table of the authors' code (alvinwan/shiftresnet-cifar).

    Channel ``c`` takes direction ``i = c mod k^2`` (see
    :func:`_direction_table`); the last ``channels mod k^2`` channels are
    not shifted, i.e. get ``(0, 0)``.

    Parameters
    ----------
    channels : int
        Number of channels C.
    kernel_size : int
        Odd kernel size k (3, 5, 7, ...).
    dilation : int
        Distance multiplier d >= 1.

    Returns
    -------
    torch.Tensor
        int64 tensor of shape [C, 2] holding (dy, dx) per channel.
    """
    _check_channels(channels)
    _check_kernel(kernel_size, dilation)
    k2 = kernel_size * kernel_size
    dirs = _direction_table(kernel_size, dilation)
    table = dirs[torch.arange(channels) % k2].clone()
    rest = channels % k2
    if rest:
        table[channels - rest:] = 0
    return table


def grouped_offsets(channels: int, kernel_size: int = 3,
                    dilation: int = 1) -> torch.Tensor:
    """Offset table of the paper's prose: k^2 contiguous groups.

    The channels are split into ``k^2`` contiguous groups of
    ``g = channels // k^2`` channels; group ``i`` (channels ``[i*g, (i+1)*g)``)
    takes direction ``i`` in raster order. Remainder handling (our choice,
    the paper only says "groups of floor(M / k^2) channels"): the last
    ``channels mod k^2`` channels are not shifted, exactly as in the
    interleaved preset. If ``channels < k^2`` every channel is a remainder
    channel and nothing moves.

    Parameters
    ----------
    channels : int
        Number of channels C.
    kernel_size : int
        Odd kernel size k.
    dilation : int
        Distance multiplier d >= 1.

    Returns
    -------
    torch.Tensor
        int64 tensor of shape [C, 2] holding (dy, dx) per channel.
    """
    _check_channels(channels)
    _check_kernel(kernel_size, dilation)
    k2 = kernel_size * kernel_size
    g = channels // k2
    dirs = _direction_table(kernel_size, dilation)
    table = torch.zeros(channels, 2, dtype=torch.int64)
    if g:
        table[: g * k2] = dirs.repeat_interleave(g, dim=0)
    return table


#: Name -> constructor of the offset presets.
GROUPINGS = {
    "interleaved": interleaved_offsets,
    "grouped": grouped_offsets,
}


def check_offsets(offsets, channels: int | None = None) -> torch.Tensor:
    """Validate an offset table and return it as an int64 CPU-agnostic tensor.

    Parameters
    ----------
    offsets : array-like or torch.Tensor
        Table of shape [C, 2] with integer (dy, dx) rows.
    channels : int, optional
        If given, C must equal it.

    Returns
    -------
    torch.Tensor
        The table as an int64 tensor.

    Raises
    ------
    ValueError
        On a wrong shape, a non-integer dtype or a channel mismatch.
    """
    if not isinstance(offsets, torch.Tensor):
        try:
            offsets = torch.as_tensor(offsets)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"offsets must be a [C, 2] integer table: {exc}")
    if offsets.dtype.is_floating_point or offsets.dtype.is_complex \
            or offsets.dtype == torch.bool:
        raise ValueError(
            f"offsets must hold integers, got dtype {offsets.dtype}")
    if offsets.dim() != 2 or offsets.shape[1] != 2 or offsets.shape[0] < 1:
        raise ValueError(
            f"offsets must have shape [C, 2] (one (dy, dx) row per channel), "
            f"got {tuple(offsets.shape)}")
    if channels is not None and offsets.shape[0] != channels:
        raise ValueError(
            f"offset table has {offsets.shape[0]} rows but the input has "
            f"{channels} channels")
    return offsets.to(torch.int64)


def shift(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Shift every channel of ``x`` by its own (dy, dx), zero-filled.

    Vectorised: the input is zero-padded once by the largest ``|offset|``
    and read back with one ``gather`` along the flattened planes (no loop
    over channels or groups). It is a linear map (a partial permutation),
    so autograd gives the exact gradient (the transposed shift).

    Parameters
    ----------
    x : torch.Tensor
        Input of shape [N, C, H, W].
    offsets : torch.Tensor
        int64 table [C, 2] of (dy, dx) per channel.

    Returns
    -------
    torch.Tensor
        Tensor of the same shape as ``x``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)
        raise ValueError(f"shift expects an [N, C, H, W] tensor, got {shape}")
    n, c, h, w = x.shape
    offsets = check_offsets(offsets, channels=c).to(x.device)
    return _gather(x, _shift_indices(offsets, h, w))


def _shift_indices(offsets: torch.Tensor, h: int, w: int) -> tuple[int, torch.Tensor]:
    """(pad, index): where each output pixel of a channel reads in its zero-padded plane.

    ``index`` is ``[C, H*W]`` on ``offsets``' device, flat positions in the
    ``(H + 2*pad) x (W + 2*pad)`` plane of that channel.
    """
    c, dev = offsets.shape[0], offsets.device
    p = int(offsets.abs().max())  # reads the table back: a device sync on a GPU
    dy = offsets[:, 0].view(c, 1, 1)
    dx = offsets[:, 1].view(c, 1, 1)
    rows = torch.arange(h, device=dev).view(1, h, 1) + dy + p   # [C,H,1]
    cols = torch.arange(w, device=dev).view(1, 1, w) + dx + p   # [C,1,W]
    return p, (rows * (w + 2 * p) + cols).reshape(c, h * w)


def _gather(x: torch.Tensor, idx: tuple[int, torch.Tensor]) -> torch.Tensor:
    p, index = idx
    if p == 0:
        return x.clone()
    n, c, h, w = x.shape
    planes = F.pad(x, (p, p, p, p)).flatten(2)                  # [N, C, (H+2p)*(W+2p)]
    # One gather along the flat plane; its gradient is a scatter-add to distinct
    # places (no sort, unlike the backward of advanced indexing, which made the
    # shift the slowest layer of a training step on a GPU).
    return planes.gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


class Shift(nn.Module):
    """Shift layer with a fixed per-channel offset table.

    The table lives in the buffer ``offsets`` (int64, [C, 2], (dy, dx)) so
    that it is saved in the state dict and exporters can read it. It has no
    parameters and costs no multiply-accumulates.

    Parameters
    ----------
    offsets : array-like or torch.Tensor
        Table of shape [C, 2] of integer (dy, dx) per channel.
    """

    def __init__(self, offsets):
        super().__init__()
        self.register_buffer("offsets", check_offsets(offsets).clone())
        self._indices = (None, None, None)  # (table, key, index tensors): see forward

    @classmethod
    def interleaved(cls, channels: int, kernel_size: int = 3,
                    dilation: int = 1) -> "Shift":
        """Shift with the authors' interleaved table (see
        :func:`interleaved_offsets`)."""
        return cls(interleaved_offsets(channels, kernel_size, dilation))

    @classmethod
    def grouped(cls, channels: int, kernel_size: int = 3,
                dilation: int = 1) -> "Shift":
        """Shift with the paper's contiguous-group table (see
        :func:`grouped_offsets`)."""
        return cls(grouped_offsets(channels, kernel_size, dilation))

    @classmethod
    def preset(cls, grouping: str, channels: int, kernel_size: int = 3,
               dilation: int = 1) -> "Shift":
        """Shift built from a named preset: "interleaved" or "grouped"."""
        if grouping not in GROUPINGS:
            raise ValueError(f"unknown grouping {grouping!r}; valid: "
                             f"{', '.join(sorted(GROUPINGS))}")
        return cls(GROUPINGS[grouping](channels, kernel_size, dilation))

    @property
    def channels(self) -> int:
        """Number of channels the table describes."""
        return int(self.offsets.shape[0])

    @property
    def max_offset(self) -> int:
        """Largest |dy| or |dx| (the line-buffer reach the hardware needs)."""
        return int(self.offsets.abs().max())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            return shift(x, self.offsets)  # shift's checks raise the one-line ValueError
        # The index tensors are kept while the table, its device and the image size stay
        # (the version counter moves when load_state_dict copies into the buffer): on a
        # GPU, rebuilding them every call would stop the host for a device sync each time.
        t = self.offsets
        key = (t._version, t.device, x.shape[2], x.shape[3])
        table, cached_key, idx = self._indices
        if table is not t or cached_key != key:  # `is`: the cache holds the table itself
            idx = _shift_indices(t, x.shape[2], x.shape[3])
            self._indices = (t, key, idx)
        return _gather(x, idx)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, max_offset={self.max_offset}"
