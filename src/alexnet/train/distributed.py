"""torch.distributed set-up for data parallel training launched by torchrun.

`torchrun --nproc_per_node=N alexnet train ...`: each rank reads its own shard of every
global batch (the loader shards by rank), gradients are averaged by DDP, rank 0 writes.
gloo on CPU, nccl on GPU. Restarts under `torchrun --max-restarts` come back with
TORCHELASTIC_RESTART_COUNT > 0 and resume from the run's last checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def setup(device_kind: str) -> DistInfo:
    """Join the process group when launched with WORLD_SIZE > 1 (torchrun sets it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

