"""The paper's optimizer and learning-rate schedules (PAPER.md section 5).

PaperSGD is the update rule exactly as printed:

    v <- momentum * v - weight_decay * lr * w - lr * grad
    w <- w + v

torch.optim.SGD instead keeps v <- momentum * v + (grad + weight_decay * w) and steps
w <- w - lr * v: the two agree while lr is constant and differ after a drop, where the
paper's velocity still carries the old lr (so the step shrinks gradually, not at once).

On the CPU, float32 groups update in one pass over memory with the package's C++ kernel
(alexnet/kernels.py): ~2.5x faster than the four foreach passes, which stay the path for
other devices and dtypes and where no compiler is found.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .. import kernels
from ..config import OptimConfig
from ..errors import ConfigError


class PaperSGD(torch.optim.Optimizer):
    """SGD with momentum and weight decay in the paper's form (lr inside the velocity)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 5e-4) -> None:  # fmt: skip
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ConfigError(f"PaperSGD: bad lr/momentum/weight_decay {lr}/{momentum}/{weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            params, grads, vels = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                vels.append(state["velocity"])
            if params:
                _paper_sgd_(params, grads, vels, lr, mom, wd)
        return loss


@torch.library.custom_op("alexnet::paper_sgd_", mutates_args=("params", "velocities"))
def _paper_sgd_(params: list[Tensor], grads: list[Tensor], velocities: list[Tensor], lr: float, momentum: float,
                weight_decay: float) -> None:  # fmt: skip
    """The update of one parameter group in place; an op, so torch.compile and torch.export see one
    opaque step with known effects instead of a pybind call they cannot trace."""
    if _one_pass(params, grads, velocities):
        kernels.load().paper_sgd_(params, grads, velocities, lr, momentum, weight_decay)
        return
    torch._foreach_mul_(velocities, momentum)
    if weight_decay:
        torch._foreach_add_(velocities, params, alpha=-weight_decay * lr)
    torch._foreach_add_(velocities, grads, alpha=-lr)
    torch._foreach_add_(params, velocities)


@_paper_sgd_.register_fake
def _paper_sgd_fake(params: list[Tensor], grads: list[Tensor], velocities: list[Tensor], lr: float, momentum: float,
                    weight_decay: float) -> None:  # fmt: skip
    return None


def _one_pass(params: list[Tensor], grads: list[Tensor], vels: list[Tensor]) -> bool:
    """True when the C++ kernel can take these tensors: float32, CPU, dense, alike in layout."""
    for p, g, v in zip(params, grads, vels):
        if p.device.type != "cpu" or p.dtype != torch.float32 or g.dtype != p.dtype or g.is_sparse:
            return False
        dense = p.is_contiguous() or (p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last))
        if not dense or g.stride() != p.stride() or v.stride() != p.stride():
            return False
    return kernels.load() is not None


def make_optimizer(params: Iterable[Tensor] | Iterable[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "paper-sgd":
        return PaperSGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.name == "nesterov"
    )


class Schedule:
    """Learning rate as a function of the step, plus the paper's plateau rule.

    `lr(step)` is pure given the state, so resuming needs only `state_dict()`. For "plateau",
    `on_validation(error)` divides the lr by 10 after `plateau_patience` validations without
    an improvement of at least `plateau_threshold`, at most `max_drops` times; a plateau after
    the last drop sets `finished` (the paper stopped there).
    """

    def __init__(self, cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> None:
        self.cfg = cfg
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total = self.steps_per_epoch * epochs
        self.warmup = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.drops = 0
        self.best = math.inf
        self.bad = 0
        self.finished = False

    def lr(self, step: int) -> float:
        cfg, base = self.cfg, self.cfg.lr
        if self.warmup and step < self.warmup:
            return base * (step + 1) / self.warmup
        if cfg.schedule == "plateau":
            return base * 0.1**self.drops
        if cfg.schedule == "constant":
            return base
        if cfg.schedule == "step":
            return base * 0.1 ** (step // (cfg.step_epochs * self.steps_per_epoch))
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        end = base * cfg.final_lr_fraction
        if cfg.schedule == "cosine":
            return end + (base - end) * 0.5 * (1 + math.cos(math.pi * progress))
        return base + (end - base) * progress  # onecycle: linear warm-up, then linear decay

    def on_validation(self, error: float) -> bool:
        """Feed a validation error; True when the lr was just divided by 10."""
        if self.cfg.schedule != "plateau":
            return False
        if error < self.best - self.cfg.plateau_threshold:
            self.best, self.bad = error, 0
            return False
        self.bad += 1
        if self.bad < self.cfg.plateau_patience:
            return False
        self.bad = 0
        if self.drops < self.cfg.max_drops:
            self.drops += 1
            return True
        self.finished = True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"drops": self.drops, "best": self.best, "bad": self.bad, "finished": self.finished}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drops, self.best, self.bad, self.finished = state["drops"], state["best"], state["bad"], state["finished"]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's lr on every group, times the group's `lr_mult` (the new layers of a transfer run)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
