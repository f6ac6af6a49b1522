"""Where a training run's model lives: one device, one of several torchrun processes (DDP), or the
paper's two towers on two devices (section 3.2).

The Trainer talks to a placement only: it places the model, wraps it once the resumed state is
in, and converts weights and optimizer state to and from the one layout checkpoints hold (the
grouped single-device model's), so a run can resume under another placement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError
from ..parallel.model_parallel import TwoTowerAlexNet, split_towers
from ..runtime import compile_model, resolve_device
from . import distributed
from .distributed import DistInfo

KINDS = ("single", "ddp", "two-tower")


@dataclass
class Placement:
    kind: str
    device: torch.device  # where batches go (the two-tower split: the first tower's device)
    dist: DistInfo
    memory_format: torch.memory_format
    towers: tuple[str, str] | None = None

    @classmethod
    def choose(cls, cfg: TrainConfig, model_parallel: tuple[str, str] | None = None) -> Placement:
        """Join the process group when torchrun launched us; split the towers when asked."""
        device = resolve_device(cfg.device)
        dist = distributed.setup(device.type)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        if model_parallel is not None:
            if dist.enabled:
                raise ConfigError("--model-parallel with torchrun is not supported: one process drives both towers")
            # the split module holds plain NCHW convs per tower
            return cls("two-tower", torch.device(model_parallel[0]), dist, torch.contiguous_format, model_parallel)
        if cfg.batch_size % dist.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {dist.world_size} processes")
        if dist.enabled:
            if device.type == "cuda":
                device = torch.device("cuda", dist.local_rank)
            return cls("ddp", device, dist, fmt)
        return cls("single", device, dist, fmt)

    def place(self, model: nn.Module) -> nn.Module:
        """The module that trains: `model` moved to the device, or its towers split (model stays on the CPU)."""
        if self.towers is not None:
            return split_towers(model, self.towers)
        return model.to(self.device, memory_format=self.memory_format)

    def wrap(self, net: nn.Module, compile: bool) -> nn.Module:
        """DDP (after any restore: it broadcasts rank 0's weights), then torch.compile."""
        if self.kind == "ddp":
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        return compile_model(net) if compile else net  # type: ignore[no-any-return]

    # ---------------------------------------------------------------- the checkpoint layout
    def state_dict(self, net: nn.Module) -> dict[str, torch.Tensor]:
        """Weights in the grouped single-device layout."""
        if isinstance(net, TwoTowerAlexNet):
            return net.grouped_state_dict()
        return unwrap(net).state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer, net: nn.Module) -> dict[str, Any]:
        if isinstance(net, TwoTowerAlexNet):
            return net.grouped_optimizer_state(optimizer)
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, net: nn.Module, state: dict[str, Any]) -> None:
        if isinstance(net, TwoTowerAlexNet):
            net.load_grouped_optimizer_state(optimizer, state)
        else:
            optimizer.load_state_dict(state)

    def close(self) -> None:
        distributed.cleanup(self.dist)


def unwrap(net: nn.Module) -> nn.Module:
    """The model inside torch.compile's and DDP's wrappers."""
    net = getattr(net, "_orig_mod", net)
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
