"""The process group of a ``torchrun`` job, shared by ``mmtok encode`` and ``mmtok train``.

Outside ``torchrun`` (``WORLD_SIZE`` unset or 1) everything is a no-op on one process, so the
same code runs on a laptop and on many GPUs / nodes. mmtok never launches processes itself.
"""

import dataclasses
import os
from typing import Any

import torch
import torch.distributed

__all__ = ["Dist", "full_tensor", "init_distributed", "like", "pick_device"]


@dataclasses.dataclass
class Dist:
    """This process's place in the job: rank, world size, local rank (GPU index on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over all ranks, in place; returns it."""
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def all_ok(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every rank (a collective, and so a barrier: every rank calls it).
        A rank that fails alone must not leave the others waiting at the next barrier forever."""
        if self.world == 1:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0])
        if torch.distributed.get_backend() == "nccl":
            flag = flag.cuda()
        torch.distributed.all_reduce(flag)
        return float(flag) == 0.0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def init_distributed(device: torch.device | None = None) -> Dist:
    """Join the ``torchrun`` process group (NCCL for CUDA devices, gloo otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not torch.distributed.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given, else this rank's GPU when there is one, else the CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2-sharded ``DTensor`` (a collective: every rank calls it, in the
    same order); any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def like(value: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor, e.g. read from a checkpoint) laid out like ``ref``: this rank's
    shard when ``ref`` is a ``DTensor`` of the same shape, else ``value`` itself. Every rank holds
    the whole ``value``, so each keeps its own shard with no communication."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(ref, DTensor) and not isinstance(value, DTensor) and value.shape == ref.shape:
        return distribute_tensor(value.to(ref.device, ref.dtype), ref.device_mesh, ref.placements,
                                 src_data_rank=None)
    return value
