"""Multi-process training with ``torchrun``: process group, rank sharding, reductions.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address);
``Distributed.from_env`` joins the group with NCCL on CUDA and Gloo on CPU. Each rank trains on
its own share of the cases (``shard``), DistributedDataParallel averages the gradients, and
rank 0 alone writes checkpoints and logs. A single process gets a ``Distributed`` whose
operations do nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> "Distributed":
        """Join the process group that ``torchrun`` describes; a plain run is a world of one."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        return cls(rank, world_size, local_rank)

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share: items ``rank``, ``rank + world_size``, ..."""
        return list(items[self.rank::self.world_size])

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64)."""
        tensor = torch.tensor(list(values), dtype=torch.float64)
        if self.enabled:
            backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            tensor = tensor.to(backend_device)
            dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
