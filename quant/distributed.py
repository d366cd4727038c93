"""The little of torch.distributed that training needs, as one object.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :class:`Context` starts a
process group (gloo on the CPU, nccl on CUDA), wraps the model in
DistributedDataParallel and all-reduces metrics; in a single process every method is
a no-op, so the training code has one path.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

T = TypeVar("T")


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started: bool = False

    @classmethod
    def from_env(cls) -> "Context":
        ws = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(rank=int(os.environ.get("RANK", "0")) if ws > 1 else 0, world_size=ws,
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")) if ws > 1 else 0)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def init_process_group(self, device: torch.device, backend: str = "auto") -> None:
        if not self.distributed or self.started:
            return
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=60), **kw)
        self.started = True

    def barrier(self) -> None:
        if self.started:
            dist.barrier()

    def rank0_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then on the other ranks (e.g. to fill a cache once).

        If rank 0 fails the other ranks still get past the barrier, run ``fn``
        themselves and fail the same way, so nobody hangs."""
        if not self.started:
            return fn()
        if self.rank == 0:
            try:
                return fn()
            finally:
                dist.barrier()
        dist.barrier()
        return fn()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over all ranks, in place."""
        if self.started:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BN running statistics) to every rank, so that all
        ranks evaluate, and rank 0 saves, the same model."""
        if self.started:
            for b in model.buffers():
                dist.broadcast(b.data, 0)

    def wrap(self, model: nn.Module, device: torch.device,
             find_unused_parameters: bool = False) -> nn.Module:
        """DistributedDataParallel around ``model`` (``find_unused_parameters`` for models
        whose parameters are not all used in every step, e.g. Brevitas scales that are
        still collecting statistics)."""
        if not self.started:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters)

    def shutdown(self, clean: bool = True) -> None:
        """Leave the process group; ``clean``: every rank got here normally.

        After a clean run the ranks wait for each other and the group is *not* torn down:
        tearing gloo down (explicitly, or by the interpreter's exit) aborted a rank now and
        then after all its work was done ("terminate called without an active exception",
        seen in CI even with a barrier first). The process must then end with
        :func:`exit_process`, which skips those destructors. After an error a rank may never
        arrive, so there is no barrier and the group is destroyed."""
        if self.started:
            try:
                if clean:
                    dist.barrier()
                else:
                    dist.destroy_process_group()
            finally:
                self.started = False

    def exit_process(self, code: int) -> None:
        """End this process with ``code``. In a multi-process run (after :meth:`shutdown`) it
        flushes stdout and stderr and leaves with ``os._exit``, so no process-group destructor
        runs at exit; a single process exits normally."""
        if self.distributed:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        sys.exit(code)
